"""Sample inputs shipped inside the package, so every chapter runs after a plain install.

Chapter "Tensors, patches and tokens" opens the photograph; later chapters reuse it.
"""

from importlib import resources

from PIL import Image

SAMPLE_PHOTO = "grace_hopper.jpg"  # Rear Admiral Grace Hopper, a public-domain U.S. Navy portrait


def sample_photo() -> Image.Image:
    """Return the shipped photograph as an RGB PIL image (512 x 600 pixels)."""
    with resources.files("pgemma.assets").joinpath(SAMPLE_PHOTO).open("rb") as file:
        image = Image.open(file)
        image.load()  # read the pixels before the file closes
    return image.convert("RGB")

"""Figures and widgets for the book.

Every widget redraws a plain plotting function, so the same figure is drawn statically in the
published book and live in Colab or Jupyter. One submodule per chapter topic; `widgets` holds the
shared machinery. The core of pgemma never imports this package (matplotlib and ipywidgets are
only needed for the book).
"""

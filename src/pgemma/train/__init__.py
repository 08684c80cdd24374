"""Training a small PaliGemma on the synthetic world (chapter "Assembling PaliGemma").

Run it: ``python -m pgemma.train --out runs/shapes`` (again, the same command, to resume), or on
N processes: ``torchrun --nproc_per_node=N -m pgemma.train --out runs/shapes``.

One module per job, in the order a run uses them:

    recipe      the settings (`Recipe`; how they were found), building the tokenizer and the model
    data        the examples of each training step, their batches, stage 0's per-patch labels
    loop        the loop both stages share: learning rate, AdamW, checkpoints that survive a kill
    distributed several processes under torchrun: each rank's slice of a batch, averaged gradients
    folder      the run folder: one trainer at a time (a lock), one recipe, no stale temporary files
    stage0      stage 0: the vision tower alone, sigmoid loss plus per-patch labels
    stage1      stage 1: the whole model, next-token loss on the answers (prefix-LM)
    evaluation  exact match per task and detection IoU on held-out scenes
    pipeline    the whole recipe (`run`): both stages, the final evaluation, the exported model
    search      the recipe search: the shipped recipe against one change at a time, and linear
                probes of each run's vision tower (``python -m pgemma.train search``)
    __main__    the command line
    finetune    a trained model to a new task (diamonds): full, frozen vision tower or LoRA, and the
                comparison the chapter "Fine-tuning PaliGemma" shows (``python -m pgemma.train finetune``)

Finding and loading the model trained this way that ships with pgemma is `pgemma.shipped`'s job,
which needs none of these modules.
"""

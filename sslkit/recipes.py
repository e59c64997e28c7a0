"""Full-size recipes: what each method changes in the gpu profile (CIFAR-10, ResNet-18 with the
CIFAR stem, batch 512, 100 epochs, SGD with 10 warm-up epochs and a cosine decay, SimCLR's
T = 0.5). The profile is SimCLR's recipe; a method whose paper or CIFAR-10 reference run used
other settings gets them here, so that ``sslkit train METHOD --profile gpu`` runs that method
as its authors would at this size. The laptop and ci profiles have no recipes: there every
method shares the small settings the notebooks were tuned with.

    method  training settings                       method options
    simclr  (the profile itself)                    -
    moco    lr 0.06, T 0.1                          K 4096, m 0.99, shuffle-BN in 8 groups
    dino    -                                       head 2048 -> 256 -> 4096, T_s 0.1, T_t 0.04,
                                                    clip 3.0, last layer frozen in epoch 1
    mae     ViT (dim 192, 12 blocks, 3 heads),      patch 4, decoder 96 wide and 4 deep,
            AdamW lr 1.5e-4 x 512/256, betas        mask ratio 0.75, norm_pix
            (0.9, 0.95), weight decay 0.05
    cpc     its patch encoder at width 64           -
            (ResNet-18 has BatchNorm, which leaks
            between the patches of an image)

Sources (published facts): MoCo's CIFAR-10 demo (ResNet-18, lr 0.06 at batch 512, wd 5e-4,
K 4096, m 0.99, T 0.1, SplitBatchNorm with 8 groups). DINO's head shape, temperatures,
gradient clipping at 3.0 and last layer frozen in the first epoch from the paper; its out_dim
of 65536 is for ImageNet, 4096 is this kit's choice for 10 classes; SGD as in the DINO
authors' ResNet recipe. MAE: the paper's optimiser (blr 1.5e-4 scaled by B/256,
betas (0.9, 0.95), wd 0.05 on the weight matrices and none on biases and norm weights) and
a ViT-tiny with patch 4, the usual CIFAR-scale choice; the paper warms up for 40 of 800+
epochs, here the profile's 10 of 100.

Every entry can still be overridden: a command-line flag (``--lr``) or ``--option KEY=VALUE``
wins over the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Recipe:
    train: dict = field(default_factory=dict)  # TrainConfig fields that differ from the profile
    options: dict = field(default_factory=dict)  # keyword arguments of the method's constructor


RECIPES = {
    "gpu": {
        "moco": Recipe(
            train={"lr": 0.06, "temperature": 0.1},
            options={"queue_size": 4096, "momentum": 0.99, "bn_splits": 8},
        ),
        "dino": Recipe(
            options={"hidden_dim": 2048, "bottleneck_dim": 256, "out_dim": 4096,
                     "student_temp": 0.1, "teacher_temp": 0.04, "momentum": 0.996,
                     "clip_grad": 3.0, "freeze_last_layer_epochs": 1},
        ),
        "mae": Recipe(
            train={"arch": "vit", "optimizer": "adamw", "lr": 1.5e-4 * 512 / 256,
                   "adam_beta2": 0.95, "weight_decay": 0.05},
            options={"patch_size": 4, "dim": 192, "depth": 12, "heads": 3, "mlp_ratio": 4.0,
                     "decoder_dim": 96, "decoder_depth": 4, "decoder_heads": 3,
                     "mask_ratio": 0.75, "norm_pix": True},
        ),
        "cpc": Recipe(train={"arch": "convnet"}),  # its own patch encoder, the wider one
    },
}


def recipe_for(profile: str, method: str) -> Recipe:
    """The recipe of `method` in `profile`; an empty one where the profile's settings apply."""
    return RECIPES.get(profile, {}).get(method, Recipe())

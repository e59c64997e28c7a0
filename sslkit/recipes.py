"""Full-size recipes: what each method changes in the gpu profile (CIFAR-10, ResNet-18 with the
CIFAR stem, batch 512, 100 epochs, SGD with momentum 0.9 and weight decay 5e-4 on every
parameter, lr 0.06 x B/256 = 0.12 reached by a linear warm-up from 0 over 10 epochs, then a
per-step cosine to 0, SimCLR's T = 0.5). The profile is SimCLR's recipe; a method whose paper or
CIFAR-10 reference run used other settings gets them here, so that ``sslkit train METHOD
--profile gpu`` runs that method as its authors would at this size. The laptop and ci profiles
have no recipes: there every method shares the small settings the notebooks were tuned with.

    method  training settings                       method options
    simclr  (the profile itself)                    -
    moco    lr 0.06, no warm-up, T 0.1              K 4096, m 0.99, shuffle-BN in 8 groups
    dino    -                                       head 2048 -> 256 -> 4096, T_s 0.1, T_t 0.04,
                                                    clip 3.0, last layer frozen in epoch 1,
                                                    crops split at scale 0.14 (ResNet recipe)
    mae     ViT (dim 192, 12 blocks, 3 heads),      patch 4, decoder 96 wide and 4 deep,
            AdamW lr 1.5e-4 x 512/256, betas        mask ratio 0.75, norm_pix
            (0.9, 0.95), weight decay 0.05
    cpc     its patch encoder at width 64           -
            (ResNet-18 has BatchNorm, which leaks
            between the patches of an image)

Sources, and where the kit departs from them (tests/test_recipes.py checks each detail):

SimCLR. The paper trains CIFAR-10 with LARS; the single-GPU runs its numbers are compared with
use SGD with momentum 0.9 and weight decay 5e-4 and a per-epoch cosine without warm-up:
dkobak/simclr-cifar10 at lr 0.03 x B/256, lightly's benchmark at 0.06 x B/128 (0.06 and 0.24
at batch 512). The profile takes 0.12, between them, with the paper's 10 warm-up epochs. T 0.5,
the CIFAR stem, a 2-layer head 512 -> 512 -> 128 with BatchNorm after the hidden layer
(lightly's; dkobak's has 1024 hidden units and no BatchNorm), and the CIFAR views of
``sslkit.augment.view_config_for``: crops of scale 0.08-1, flip, colour jitter of strength 0.5
(0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale 0.2, no blur.

MoCo: the authors' CIFAR-10 demo (ResNet-18, lr 0.06 at batch 512 decayed by a cosine from the
first epoch, no warm-up, wd 5e-4, K 4096, m 0.99, T 0.1, SplitBatchNorm with 8 groups, the
asymmetric loss by default: kNN 82.6 % at 200 epochs; ``--option symmetric=true`` is its
symmetric loss, 85.3 %, at twice the cost per step). Departures: the demo's head is one linear
layer to 128 and its kNN monitor reads that output; here the head is MoCo v2's 2-layer MLP (with
BatchNorm after the hidden layer, like SimCLR's head here; v2's own has none) and evaluation
reads h before it, as lightly's MoCo benchmark does (MLP head, kNN 84.7 % at 200 epochs with a
symmetric loss). MoCo v2's blur is kept, but at 32 px its sigma is at most 2.0 x 32/224 = 0.29
pixel, a 3-tap kernel with side weights below 0.003: in effect the demo's views, which have none.

DINO (paper and the authors' README): the head's shape, L2-normalised bottleneck and
weight-normalised last layer with its norm fixed to 1, T_s 0.1, T_t 0.04 (the default and the
ResNet recipe's; the warm-up to 0.07 is the ViT recipe's), centre momentum 0.9, teacher momentum
0.996 -> 1 by a per-step cosine, gradient clipping at 3.0 per parameter, last layer frozen in
epoch 1; and from the ResNet-50 recipe SGD with a constant weight decay and crops split at scale
0.14 (global 0.14-1, local 0.05-0.14; the ViT split at 0.4 crops far less than the 0.08-1 that
CIFAR's contrastive recipes use). Its out_dim of 65536 is for ImageNet: 4096 is solo-learn's
CIFAR value. Departures: lr and weight
decay are the profile's (0.12 and 5e-4 on every parameter), the CIFAR SGD values of lightly's
DINO benchmark (6e-2 x B/128, 5e-4), not the ImageNet ResNet's 0.03 x B/256 and 1e-4 without
decay on biases and norms; DINO's weight decay 0.04 -> 0.4 belongs to its AdamW ViT recipe (the
training loop has no weight-decay schedule); 2 global 32-px crops and 4 local 16-px crops with
the SimCLR CIFAR views (no blur, no solarisation), where lightly's CIFAR benchmark (kNN 81.3 %
at 200 epochs) takes the 2 global crops only, at scale 0.4-1.

MAE: the paper's optimiser (blr 1.5e-4 scaled by B/256, AdamW betas (0.9, 0.95), weight decay
0.05 by its code's rule: none on 1-D parameters, biases and norm weights, and decay on every
other trainable one, the [CLS] and mask tokens included: only MAE's fine-tuning exempts them),
mask ratio 0.75, norm_pix, fixed sine-cosine positions, crops of scale 0.2-1 and flip only.
Departures: a ViT-tiny with patch 4 (CIFAR-scale MAEs use patch 2-4; patch 2 would give the
encoder 4x the tokens); a decoder 96 wide and 4 deep for the paper's 512 x 8 (its ablation finds
decoder depth matters for linear probing, not for fine-tuning); 10 warm-up epochs of 100 for the
paper's 40 of 800+.

Schedules are per optimiser step (sslkit.schedules): the warm-up starts from 0, as DINO's and
MAE's code; the demo and lightly step a cosine per epoch, which differs by under one epoch.

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
            train={"lr": 0.06, "temperature": 0.1, "warmup_epochs": 0},
            options={"queue_size": 4096, "momentum": 0.99, "bn_splits": 8},
        ),
        "dino": Recipe(
            options={"hidden_dim": 2048, "bottleneck_dim": 256, "out_dim": 4096,
                     "student_temp": 0.1, "teacher_temp": 0.04, "momentum": 0.996,
                     "clip_grad": 3.0, "freeze_last_layer_epochs": 1, "min_global_scale": 0.14},
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

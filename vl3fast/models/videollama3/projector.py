"""Projector (spec B, ``mlp2x_gelu``): Linear(C_vision -> D) -> exact (erf) GELU -> Linear(D -> D)."""
from __future__ import annotations

import torch.nn as nn


class Projector(nn.Module):
    def __init__(self, vision_hidden: int, text_hidden: int):
        super().__init__()
        # nn.Sequential so the parameter names are readout.0 / readout.2, as in both checkpoint formats.
        self.readout = nn.Sequential(nn.Linear(vision_hidden, text_hidden), nn.GELU(), nn.Linear(text_hidden, text_hidden))

    def forward(self, x_MC):
        return self.readout(x_MC)

"""torchvision's Swin attention with a forward that reads its masked ``qkv`` and ``proj``.

``ShiftedWindowAttention(V2).forward`` passes ``qkv.weight`` and ``proj.weight`` straight to
``shifted_window_attention``, so masking the two Linear children alone would never reach the
output. ``convert`` turns such a module into the subclass below (same fields, its children
masked): the same forward, given the effective weights of the masked layers. Imported only
when a Swin model is converted (it imports torchvision); module level so converted models pickle.
"""

from __future__ import annotations

import torch
from torchvision.models import swin_transformer as swin


def _masked_forward(self, x: torch.Tensor, **extra) -> torch.Tensor:
    return swin.shifted_window_attention(
        x, self.qkv.effective_weight(), self.proj.effective_weight(), self.get_relative_position_bias(),
        self.window_size, self.num_heads, shift_size=self.shift_size,
        attention_dropout=self.attention_dropout, dropout=self.dropout,
        qkv_bias=self.qkv.bias, proj_bias=self.proj.bias, training=self.training, **extra,
    )  # fmt: skip


class MaskedShiftedWindowAttention(swin.ShiftedWindowAttention):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _masked_forward(self, x)


class MaskedShiftedWindowAttentionV2(swin.ShiftedWindowAttentionV2):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _masked_forward(self, x, logit_scale=self.logit_scale)


MASKED = {
    swin.ShiftedWindowAttention: MaskedShiftedWindowAttention,
    swin.ShiftedWindowAttentionV2: MaskedShiftedWindowAttentionV2,
}

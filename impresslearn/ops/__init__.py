"""The ops of impresslearn: the contract between Python and the kernels (docs/design.md, Ops).

Every op has a pure-PyTorch reference (``*_reference``), kernels registered with
``torch.library``, and a functional API that picks the backend by the rule in
``impresslearn._backends``: ``backend=``, else ``IMPRESSLEARN_BACKEND``, else automatic.
"""

from ._checks import keep_count, num_planes
from ._registry import load_triton_ops
from .bank import append_mask, grow_bank, pack_masks, set_mask_, unpack_masks
from .combine import combine_masks, combine_masks_alpha_grad, combine_masks_rows, combine_masks_rows_alpha_grad
from .linear import impress_conv2d, impress_linear
from .topk import edge_popup_weight, topk_mask, topk_mask_into_

__all__ = [
    "append_mask",
    "combine_masks",
    "combine_masks_alpha_grad",
    "combine_masks_rows",
    "combine_masks_rows_alpha_grad",
    "edge_popup_weight",
    "grow_bank",
    "impress_conv2d",
    "impress_linear",
    "keep_count",
    "load_triton_ops",
    "num_planes",
    "pack_masks",
    "set_mask_",
    "topk_mask",
    "topk_mask_into_",
    "unpack_masks",
]

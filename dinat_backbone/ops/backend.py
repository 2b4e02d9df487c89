"""The backend protocol: a call described once, each backend's capabilities declared as data, one checker.

As xformers' op classes and NATTEN's ``backends/``: the dispatcher builds one :class:`Call` per
``na2d`` call (the shape of the map the backend will run on, dtype, device, kernel size, dilation,
rpb on / off, whether a gradient is needed, attention dropout, exporting); each backend file
defines one :class:`Backend` holding its :class:`Capabilities` (devices, dtypes, head dims,
kernel sizes, rpb, backward, dropout, export, automatic or by name only) and, only for what data
cannot say (a kernel that did not build, a library's own compatibility query), a ``reasons`` hook.
:func:`check` turns a declaration into the reasons a call cannot run, with one wording for all
backends. Adding a backend is one file defining ``BACKEND`` and one entry in
:data:`dinat_backbone.ops.dispatch.BACKEND_ORDER`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Tuple, Union

import torch

__all__ = ["Call", "Capabilities", "Backend", "check"]


@dataclasses.dataclass(frozen=True)
class Call:
    """One ``na2d`` call as the backends see it (built once per call by the dispatcher).

    ``shape`` is ``[batch, X, Y, heads, head_dim]`` of the map the backend runs on: for a padded
    call (``pad_tokens`` given: ``DiNAT(small_input='pad')``), the padded map."""
    shape: Tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    kernel_size: int
    dilation: int = 1
    has_rpb: bool = False
    needs_grad: bool = False
    attn_dropout: float = 0.0
    exporting: bool = False
    #: q / k / v of a zero input token (each ``[heads, head_dim]``) for a padded call, else None
    pad_tokens: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = dataclasses.field(
        default=None, compare=False, repr=False)

    @property
    def head_dim(self) -> int:
        return self.shape[-1] if len(self.shape) == 5 else -1

    @classmethod
    def describe(cls, query, rpb=None, kernel_size: int = 7, dilation: int = 1, *, key=None, value=None,
                 needs_grad: Optional[bool] = None, attn_dropout: float = 0.0, exporting: bool = False,
                 shape: Optional[Tuple[int, ...]] = None, pad_tokens=None) -> "Call":
        """The call of ``query`` / ``rpb`` (tensors, or anything with their ``shape``, ``dtype``,
        ``device`` and ``requires_grad``, such as :class:`dinat_backbone.ops.TensorSpec`).
        ``needs_grad`` defaults to: grad mode is on and one of query, key, value, rpb requires grad."""
        if needs_grad is None:
            needs_grad = torch.is_grad_enabled() and any(
                t is not None and getattr(t, "requires_grad", False) for t in (query, key, value, rpb))
        return cls(shape=tuple(query.shape) if shape is None else tuple(shape), dtype=query.dtype,
                   device=torch.device(query.device), kernel_size=int(kernel_size), dilation=int(dilation),
                   has_rpb=rpb is not None, needs_grad=bool(needs_grad), attn_dropout=float(attn_dropout),
                   exporting=bool(exporting), pad_tokens=pad_tokens)


_DTYPE_NAMES = {torch.float64: "float64", torch.float32: "float32", torch.bfloat16: "bfloat16",
                torch.float16: "float16"}


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a backend serves. ``None``: no restriction."""
    #: device types, e.g. ('cpu',); None: any device
    devices: Optional[Tuple[str, ...]] = None
    #: said after the device reason (where else the backend could run)
    device_hint: str = ""
    dtypes: Optional[Tuple[torch.dtype, ...]] = None
    #: inclusive (min, max)
    head_dims: Optional[Tuple[int, int]] = None
    max_kernel_size: Optional[int] = None
    rpb: bool = True
    #: why rpb is missing, said after the rpb reason
    rpb_hint: str = ""
    backward: bool = True
    dropout: bool = False
    #: 'never' (refuses exporting calls), 'only' (serves exporting calls only)
    export: str = "never"
    #: False: never chosen automatically, only when asked for by name
    automatic: bool = True
    #: runs a padded call (``Call.pad_tokens``) on the unpadded map itself (the dispatcher pads for the others)
    folds_padding: bool = False


def check(name: str, caps: Capabilities, call: Call) -> List[str]:
    """The reasons ``caps`` cannot serve ``call`` (empty: it can), worded the same for every backend."""
    out = []
    if caps.devices is not None and call.device.type not in caps.devices:
        where = " or ".join(d.upper() for d in caps.devices)
        out.append(f"needs {where} tensors, got {call.device}{caps.device_hint}")
    if caps.dtypes is not None and call.dtype not in caps.dtypes:
        names = ", ".join(_DTYPE_NAMES.get(d, str(d)) for d in caps.dtypes)
        out.append(f"dtype {call.dtype} (supported: {names})")
    if caps.head_dims is not None and not caps.head_dims[0] <= call.head_dim <= caps.head_dims[1]:
        out.append(f"head_dim {call.head_dim} is outside {caps.head_dims[0]}..{caps.head_dims[1]}")
    if caps.max_kernel_size is not None and call.kernel_size > caps.max_kernel_size:
        out.append(f"kernel_size {call.kernel_size} > {caps.max_kernel_size}, the largest the {name} backend handles")
    if call.has_rpb and not caps.rpb:
        out.append(f"it has no relative positional bias{caps.rpb_hint}")
    if call.needs_grad and not caps.backward:
        out.append("it has no backward (an input requires grad)")
    if call.attn_dropout > 0.0 and not caps.dropout:
        out.append("attention dropout is not implemented (the fused kernel never materialises droppable weights)"
                   if caps.export == "never" else "attention dropout (export graphs are for inference; call "
                   "model.eval())")
    if call.exporting and caps.export == "never":
        out.append("exporting: ONNX / torch.export graphs need decomposable ops (the 'export' backend serves these "
                   "calls)")
    if not call.exporting and caps.export == "only":
        out.append("serves only exported / traced graphs (inside export_mode() or torch export tracing)")
    return out


@dataclasses.dataclass(frozen=True)
class Backend:
    """One entry of the backend table.

    ``run(query, key, value, rpb, scale, call)`` computes the op for a call :meth:`reasons` accepts
    (it validates nothing: the dispatcher did). ``capabilities`` is a :class:`Capabilities` or a
    function returning one (for declarations that depend on the environment, read per call).
    ``extra_reasons(call)``: what data cannot say; its reasons come first."""
    name: str
    capabilities: Union[Capabilities, Callable[[], Capabilities]]
    run: Callable[..., torch.Tensor]
    extra_reasons: Optional[Callable[[Call], List[str]]] = None

    def declared(self) -> Capabilities:
        caps = self.capabilities
        return caps if isinstance(caps, Capabilities) else caps()

    def reasons(self, call: Call, automatic: bool = False) -> List[str]:
        """Why this backend cannot serve ``call``; ``automatic``: also why automatic selection
        passes it over (by-name-only backends; their hook is then not asked)."""
        caps = self.declared()
        data = check(self.name, caps, call)
        if automatic and not caps.automatic:
            return data + [f"runs only when asked for by name (backend={self.name!r})"]
        extra = self.extra_reasons(call) if self.extra_reasons is not None else []
        return list(extra) + data

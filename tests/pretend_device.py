"""A pretend accelerator: CPU tensors that behave, as far as device placement goes, like tensors on a GPU.

Why: the suite has no GPU, and on the CPU every tensor is on the same device, so code that leaves rewards on the
host while log-probs live on the GPU passes every test here and fails at the first step on a real machine. Under
:func:`pretend_accelerator`, a tensor "on the accelerator" is a real CPU tensor whose **storage** carries a mark;
a :class:`torch.overrides.TorchFunctionMode` sees every torch call and

- reports ``cuda:0`` for ``Tensor.device`` (``is_cuda``, ``is_cpu``, ``get_device``) of a marked tensor;
- marks what lands on the accelerator: ``.to(pretend)``, ``.cuda()``, factories called with ``device=pretend``,
  ``*_like`` / ``new_*`` of a marked tensor, and every new tensor an op computes from a marked input (views and
  in-place results share the marked storage, so they need nothing); ``.cpu()`` / ``.to("cpu")`` give unmarked copies;
- raises CUDA's ``RuntimeError("Expected all tensors to be on the same device ...")``, naming the op and the
  calling line, when an op mixes a marked tensor with an unmarked tensor of dimension >= 1 (an unmarked 0-dim
  tensor is a CPU scalar, which CUDA kernels accept; a CPU index tensor may index a marked tensor), or writes a
  marked value into an unmarked tensor in place (not ``copy_``, which crosses devices);
- raises CUDA's ``TypeError`` for ``.numpy()`` of a marked tensor; ``.item()``, ``.tolist()``, ``float()`` work.

Marking storages rather than tensor objects makes views, ``.data``, ``detach()`` and ``nn.Parameter(t)`` follow
their storage without any bookkeeping. Gradients that autograd accumulates in C++ are marked when read through
``Tensor.grad`` (the only way Python code reaches them). Marks belong to one :class:`PretendAccelerator`: they
mean nothing outside its ``with`` block.

Example:
    >>> with pretend_accelerator() as acc:
    ...     x = torch.ones(3, device=acc.device)
    ...     (x * 2).device, (x * 2).cpu().device
    (device(type='cuda', index=0), device(type='cpu'))
"""

from __future__ import annotations

import contextlib
import os
import sys
import sysconfig
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_Tensor = torch._C.TensorBase
_MARK = "_pretend_accelerator_mark"
_HERE = os.path.abspath(__file__)
# installed packages (torch, transformers, ...): an error names the first line outside them, in the code under test
_INSTALLED = tuple(
    os.path.abspath(p) + os.sep for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
)

# where the output lands is decided by the call (a target device, or ``self``), never by "any input is marked"
_TO = {_Tensor.to, torch.Tensor.to}
_CUDA = {_Tensor.cuda, torch.Tensor.cuda}
_CPU = {_Tensor.cpu, torch.Tensor.cpu}
_TYPE_AS = {_Tensor.type_as, torch.Tensor.type_as}
_DATA_FACTORIES = {torch.tensor, torch.as_tensor, torch.asarray}
_NEW = {
    getattr(_Tensor, name)
    for name in ("new_tensor", "new_zeros", "new_ones", "new_empty", "new_full", "new_empty_strided")
}
_GETITEM = {_Tensor.__getitem__, torch.Tensor.__getitem__}
_SETITEM = {_Tensor.__setitem__, torch.Tensor.__setitem__}
_NUMPY = {_Tensor.numpy, torch.Tensor.numpy, torch.Tensor.__array__}
_GET_DEVICE = {_Tensor.get_device, torch.Tensor.get_device}
_DEEPCOPY = {torch.Tensor.__deepcopy__}
_REPR = {torch.Tensor.__repr__}
# every operand on one device, CPU scalars included (cat and stack do not accept a CPU scalar beside GPU tensors)
_STRICT = {torch.cat, torch.concat, torch.concatenate, torch.stack, torch.hstack, torch.vstack}
# questions about tensors, not computations: any devices may meet
_INQUIRIES = {torch._has_compatible_shallow_copy_type, torch.is_same_size, _Tensor.is_set_to}
# in-place methods that may take an operand from another device, or that touch no data
_CROSS_DEVICE_INPLACE = {"copy_", "set_", "requires_grad_", "share_memory_", "retain_grad"}


class PretendAccelerator(TorchFunctionMode):
    """The mode behind :func:`pretend_accelerator`; ``device`` is what marked tensors report."""

    def __init__(self, device: torch.device | str = "cuda:0") -> None:
        super().__init__()
        self.device = torch.device(device)
        if self.device.type == "cpu":
            raise ValueError("the pretend accelerator must not be the CPU")
        if self.device.index is None:
            self.device = torch.device(self.device.type, 0)
        self._token = object()  # this accelerator's mark, so that two blocks never share marks

    # ---- marks -------------------------------------------------------------------------------------------

    def is_marked(self, tensor: torch.Tensor) -> bool:
        """Is ``tensor`` on the pretend accelerator (its storage carries this accelerator's mark)?"""
        with torch._C.DisableTorchFunction():
            return self._marked(tensor)

    def place(self, obj: torch.nn.Module | torch.Tensor) -> Any:
        """Put a module (every parameter, buffer and existing gradient) or a tensor on the accelerator, in place:
        parameters keep their identity, so an optimiser built before or after sees the same tensors."""
        with torch._C.DisableTorchFunction():
            if isinstance(obj, torch.nn.Module):
                for tensor in [*obj.parameters(), *obj.buffers()]:
                    self._mark(tensor)
                    if tensor.grad is not None:
                        self._mark(tensor.grad)
            else:
                self._mark(obj)
        return obj

    def _marked(self, tensor: torch.Tensor) -> bool:
        storage = _storage(tensor)
        return storage is not None and getattr(storage, _MARK, None) is self._token

    def _mark(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = _storage(tensor)
        if storage is not None:
            setattr(storage, _MARK, self._token)
        return tensor

    def _is_target(self, device: Any) -> bool | None:
        """True: the pretend device; False: the CPU; None: neither (meta, ...), left alone."""
        if isinstance(device, int) and not isinstance(device, bool):
            return True  # an index means a GPU, as in torch
        dev = torch.device(device)
        if dev.type == self.device.type:
            return True
        return False if dev.type == "cpu" else None

    # ---- the mode ----------------------------------------------------------------------------------------

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in ("__get__", "__set__"):
            return self._attribute(func, name, args)
        if func in _TO or func in _CUDA or func in _CPU or func in _TYPE_AS:
            return self._convert(func, args, kwargs)
        if kwargs.get("device") is not None:
            return self._factory(func, args, kwargs)
        if func in _DATA_FACTORIES:  # torch.tensor(data): on the accelerator only when data is a marked tensor
            data = args[0] if args else kwargs.get("data", kwargs.get("obj"))
            marked = isinstance(data, torch.Tensor) and self._marked(data)
            return self._settle(func(*args, **kwargs), marked, _tensors((args, kwargs)))
        if func in _NEW:
            return self._settle(func(*args, **kwargs), self._marked(args[0]), _tensors((args, kwargs)))
        if func in _NUMPY:
            if self._marked(args[0]) and not kwargs.get("force", False):
                raise TypeError(
                    f"can't convert {self.device} device type tensor to numpy. "
                    "Use Tensor.cpu() to copy the tensor to host memory first."
                )
            return func(*args, **kwargs)
        if func in _GET_DEVICE:
            return self.device.index if self._marked(args[0]) else func(*args, **kwargs)
        if func in _DEEPCOPY:
            return self._settle(func(*args, **kwargs), self._marked(args[0]), [args[0]])
        if func in _REPR:
            text = func(*args, **kwargs)
            if self._marked(args[0]) and text.endswith(")"):
                text = f"{text[:-1]}, device='{self.device}')"
            return text
        if func in _GETITEM or func in _SETITEM:
            return self._index(func, args, kwargs)
        if func in _INQUIRIES:
            return func(*args, **kwargs)
        if name in _CROSS_DEVICE_INPLACE:  # dst.copy_(src) crosses devices; the result is dst, wherever it is
            return func(*args, **kwargs)
        return self._op(func, name, args, kwargs)

    def _attribute(self, func: Callable, name: str, args: tuple) -> Any:
        """Getters and setters: ``device``, ``is_cuda``, ``is_cpu`` and ``grad`` know about the marks."""
        descriptor = getattr(func, "__self__", None)
        owner = args[0] if args else None
        if name == "__set__":
            if descriptor is _Tensor.grad and isinstance(args[1], torch.Tensor):
                if self._marked(owner) != self._marked(args[1]):
                    raise RuntimeError(
                        f"assigned grad has data located on {self._where(args[1])}, different from the tensor's "
                        f"device {self._where(owner)}{_caller()}"
                    )
            return func(*args)
        result = func(*args)
        if not isinstance(owner, torch.Tensor) or not self._marked(owner):
            return result
        if descriptor is _Tensor.device:
            return self.device
        if descriptor is _Tensor.is_cuda:
            return self.device.type == "cuda"
        if descriptor is _Tensor.is_cpu:
            return False
        if descriptor is _Tensor.grad and isinstance(result, torch.Tensor):
            self._mark(result)  # autograd accumulated it in C++, from the marked graph
        return result

    def _convert(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        """``.to(...)``, ``.cuda()``, ``.cpu()``, ``.type_as(other)``: a copy whenever the device changes."""
        source = args[0]
        if func in _CUDA:
            target: bool | None = True
            result = source
        elif func in _CPU:
            target = False
            result = source
        else:
            target, call_args, call_kwargs = self._to_arguments(args, kwargs)
            result = func(*call_args, **call_kwargs)
        if target is None:
            return self._settle(result, self._marked(source), [source])
        if result is source or _same_storage(result, source):
            if self._marked(source) != target:
                result = result.clone()  # crossing devices copies, as on a GPU
        return self._mark(result) if target else result

    def _to_arguments(self, args: tuple, kwargs: dict) -> tuple[bool | None, list, dict]:
        """The target (pretend / cpu / unchanged) of ``.to`` or ``.type_as`` and its arguments on the real CPU."""
        target = None
        call_args = [args[0]]
        for arg in args[1:]:
            if isinstance(arg, torch.Tensor):  # .to(other) / .type_as(other): other's dtype and device
                target = self._marked(arg)
                call_args.append(torch.empty((), dtype=arg.dtype))
            elif isinstance(arg, (str, torch.device)) or (isinstance(arg, int) and not isinstance(arg, bool)):
                target = self._is_target(arg)
                call_args.append(torch.device("cpu") if target is not None else arg)
            else:
                call_args.append(arg)
        call_kwargs = dict(kwargs)
        if call_kwargs.get("device") is not None:
            target = self._is_target(call_kwargs["device"])
            if target is not None:
                call_kwargs["device"] = torch.device("cpu")
        if isinstance(call_kwargs.get("other"), torch.Tensor):
            target = self._marked(call_kwargs["other"])
            call_kwargs["other"] = torch.empty((), dtype=call_kwargs["other"].dtype)
        return target, call_args, call_kwargs

    def _factory(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        """A call with ``device=``: the output lands there whatever the inputs (a copy when they are elsewhere)."""
        target = self._is_target(kwargs["device"])
        if target is None:
            return func(*args, **kwargs)
        result = func(*args, **{**kwargs, "device": torch.device("cpu")})
        inputs = _tensors((args, kwargs))
        return _map_tensors(result, lambda t: self._land(t, target, inputs))

    def _land(self, tensor: torch.Tensor, target: bool, inputs: list[torch.Tensor]) -> torch.Tensor:
        if any(_same_storage(tensor, x) and self._marked(x) != target for x in inputs):
            tensor = tensor.clone()
        return self._mark(tensor) if target else tensor

    def _settle(self, result: Any, marked: bool, inputs: list[torch.Tensor]) -> Any:
        """Mark the new tensors of ``result`` when the op ran on the accelerator; tensors sharing an input's
        storage (views, in-place results, no-op conversions) already carry that input's mark."""
        if not marked:
            return result

        def settle(tensor: torch.Tensor) -> torch.Tensor:
            if not any(_same_storage(tensor, x) for x in inputs):
                self._mark(tensor)
            return tensor

        return _map_tensors(result, settle)

    def _index(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        """``t[i]`` and ``t[i] = v``: a CPU index tensor may index a marked tensor (as on a GPU), a marked index
        may not index a CPU tensor; an advanced-indexing write takes a CPU value only as a scalar."""
        source, index = args[0], args[1]
        indices = _tensors(index)
        source_marked = self._marked(source)
        for ix in indices:
            if self._marked(ix) and not source_marked:
                self._mismatch(func, ix, source, "as an index of")
        if func in _SETITEM and len(args) > 2 and isinstance(args[2], torch.Tensor):
            value = args[2]
            advanced = bool(indices) or isinstance(index, list) or any(isinstance(i, list) for i in _items(index))
            if advanced and self._marked(value) != source_marked and value.dim() > 0:
                self._mismatch(func, *((source, value) if source_marked else (value, source)))
        return self._settle(func(*args, **kwargs), source_marked, [source])

    def _op(self, func: Callable, name: str, args: tuple, kwargs: dict) -> Any:
        """Any other op: operands on one device (CPU scalars allowed), outputs where the operands were."""
        inputs = _tensors((args, kwargs))
        marked = [t for t in inputs if self._marked(t)]
        if marked:
            strict = func in _STRICT
            for t in inputs:
                if not self._marked(t) and (t.dim() > 0 or strict):
                    self._mismatch(func, marked[0], t)
            inplace = (name.endswith("_") and not name.startswith("__")) or (
                name.startswith("__i") and name not in ("__index__", "__int__", "__invert__", "__iter__")
            )
            written = _tensors(args[0]) if inplace and args else []
            written += _tensors(kwargs.get("out"))
            for t in written:
                if not self._marked(t):
                    self._mismatch(func, marked[0], t, "written into")
        return self._settle(func(*args, **kwargs), bool(marked), inputs)

    # ---- errors ------------------------------------------------------------------------------------------

    def _where(self, tensor: torch.Tensor) -> str:
        return str(self.device) if self._marked(tensor) else "cpu"

    def _mismatch(self, func: Callable, here: torch.Tensor, there: torch.Tensor, how: str = "met") -> None:
        raise RuntimeError(
            f"Expected all tensors to be on the same device, but found at least two devices, "
            f"{self._where(here)} and {self._where(there)}! (pretend accelerator: in {_op_name(func)}, a "
            f"{self._where(here)} tensor of shape {tuple(here.shape)} {how} a {self._where(there)} tensor of shape "
            f"{tuple(there.shape)}{_caller()})"
        )


@contextlib.contextmanager
def pretend_accelerator(device: torch.device | str = "cuda:0") -> Iterator[PretendAccelerator]:
    """Within the block, marked CPU tensors act as tensors on ``device``; yields the accelerator, whose
    ``device`` is the pretend device and whose ``place(module)`` puts a model on it."""
    accelerator = PretendAccelerator(device)
    with accelerator:
        yield accelerator


# ---- helpers (called with the mode off: inside __torch_function__ or under DisableTorchFunction) ---------------


def _storage(tensor: torch.Tensor) -> torch.UntypedStorage | None:
    try:
        return tensor.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError):  # sparse, nested, functional tensors: no storage
        return None


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    sa, sb = _storage(a), _storage(b)
    return sa is not None and sb is not None and sa is sb


def _items(obj: Any) -> list[Any]:
    return list(obj) if isinstance(obj, (list, tuple)) else [obj]


def _tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor in nested lists, tuples and dicts (an op's arguments)."""
    found: list[torch.Tensor] = []
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            found.append(item)
        elif isinstance(item, (list, tuple)) and not isinstance(item, torch.Size):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return found


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``fn`` on every tensor of an op's result (a tensor, a tuple or list of them, a named tuple)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, list):
        return [_map_tensors(x, fn) for x in obj]
    if isinstance(obj, tuple) and not isinstance(obj, torch.Size):
        mapped = [_map_tensors(x, fn) for x in obj]
        if all(a is b for a, b in zip(mapped, obj)):
            return obj  # keeps named tuples (torch.return_types) as they are
        return type(obj)(mapped) if type(obj) is tuple else type(obj)(*mapped)
    return obj


def _op_name(func: Callable) -> str:
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    qualname = qualname.replace("TensorBase.", "Tensor.").replace("_VariableFunctionsClass.", "torch.")
    module = getattr(func, "__module__", None)
    if module and not qualname.startswith(("Tensor.", "torch.")):
        qualname = f"{module}.{qualname}"
    return qualname


def _caller() -> str:
    """``, called from file:line in function`` for the innermost frame outside installed packages and this file."""
    frame = sys._getframe(1)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if path != _HERE and not path.startswith(_INSTALLED):
            return f", called from {path}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back
    return ""

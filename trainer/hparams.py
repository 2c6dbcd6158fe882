"""`save_hyperparameters()`: capture the caller's __init__ arguments into an `hparams` dict."""

from __future__ import annotations

import inspect
import os
from typing import Any


class AttributeDict(dict):
    """A dict whose keys read as attributes (`self.hparams.lr`)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value


def collect_init_args(obj: Any, frame: Any, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """The arguments of the innermost `__init__` of `obj` on the stack, from `frame` outwards."""
    args: dict[str, Any] = {}
    while frame is not None:
        code = frame.f_code
        local = frame.f_locals
        if code.co_name == "__init__" and local.get("self") is obj:
            sig_names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
            found = {n: local[n] for n in sig_names if n != "self" and n in local}
            if code.co_flags & inspect.CO_VARKEYWORDS:
                kw_name = code.co_varnames[code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & 4)]
                found.update(local.get(kw_name, {}))
            # Outer (subclass) __init__ frames override the inner ones they call.
            args = {**args, **found}
        frame = frame.f_back
    return {k: v for k, v in args.items() if k not in ignore and not k.startswith("__")}


class HyperparametersMixin:
    def save_hyperparameters(
        self, *args: Any, ignore: str | list[str] | tuple[str, ...] = (), frame: Any = None
    ) -> None:
        """Store the calling __init__'s arguments (or the names given) in `self.hparams`."""
        if isinstance(ignore, str):
            ignore = (ignore,)
        frame = frame or inspect.currentframe().f_back  # type: ignore[union-attr]
        init_args = collect_init_args(self, frame, tuple(ignore))
        if args and all(isinstance(a, str) for a in args):
            hp = {k: init_args[k] for k in args if k in init_args}
        elif len(args) == 1 and isinstance(args[0], dict):
            hp = dict(args[0])
        else:
            hp = init_args
        object.__setattr__(self, "_hparams", AttributeDict(hp))

    @property
    def hparams(self) -> AttributeDict:
        if not hasattr(self, "_hparams"):
            object.__setattr__(self, "_hparams", AttributeDict())
        return self._hparams  # type: ignore[attr-defined]


def instantiate_from_hparams(cls: type, hparams: dict[str, Any], overrides: dict[str, Any], path: Any) -> Any:
    """`cls(**{**hparams, **overrides})`, with a clear error when the checkpoint lacks what __init__ needs."""
    kwargs = {**hparams, **overrides}
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        from .errors import MisconfigurationError

        hint = "" if hparams else " The checkpoint holds no hyper_parameters (call self.save_hyperparameters())."
        raise MisconfigurationError(
            f"cannot rebuild {cls.__name__} from {os.fspath(path)}: {exc}.{hint} Pass the missing arguments as "
            f"{cls.__name__}.load_from_checkpoint(path, name=value)."
        ) from exc
    return cls(**kwargs)

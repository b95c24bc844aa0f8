"""A flat, GluonCV-style registry: lower-cased names, errors that list them."""

from __future__ import annotations

import difflib
import inspect
from fractions import Fraction
from typing import Any, Callable, Dict, Generic, List, Tuple, Type, TypeVar

from .errors import ConfigError
from .validation import MissingValue

__all__ = ["Registry", "parse_value"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps lower-cased names (and aliases) to factories.

    Parameters
    ----------
    kind : str
        What is registered ("attack", "defence", ...), used in error messages.
    name_errors : bool
        Whether :meth:`make`'s errors start with ``kind`` (``"detector magnet does not take ..."``).
    no_options : str
        What :meth:`make` says a factory without parameters accepts.
    keyword_only : bool
        Whether :meth:`make` accepts only keyword-only parameters.
    check_required : bool
        Whether :meth:`make` refuses options that lack a required parameter (a :class:`MissingValue`).
    wrap_errors : tuple of exception types
        Errors of the factory that :meth:`make` re-raises as a ConfigError prefixed with ``"<kind> <name>: "``.
    """

    def __init__(self, kind: str, *, name_errors: bool = False, no_options: str = "it accepts ",
                 keyword_only: bool = False, check_required: bool = True,
                 wrap_errors: Tuple[Type[Exception], ...] = ()) -> None:
        self.kind = kind
        self._name_errors = name_errors
        self._no_options = no_options
        self._keyword_only = keyword_only
        self._check_required = check_required
        self._wrap_errors = wrap_errors
        self._factories: Dict[str, Callable[..., T]] = {}
        self._aliases: Dict[str, str] = {}

    def register(self, name: str, *aliases: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Class decorator registering a factory under ``name`` and ``aliases``."""

        def wrap(factory: Callable[..., T]) -> Callable[..., T]:
            key = name.lower()
            if key in self._factories:
                raise ValueError(f"{self.kind} {key!r} registered twice")
            self._factories[key] = factory
            for alias in aliases:
                self._aliases[alias.lower()] = key
            return factory

        return wrap

    def names(self) -> List[str]:
        """The registered names, sorted."""
        return sorted(self._factories)

    def resolve(self, name: str) -> str:
        """The canonical name for ``name`` or an alias; ConfigError listing the valid names otherwise."""
        key = str(name).strip().lower()
        key = self._aliases.get(key, key)
        if key not in self._factories:
            hint = f" (did you mean {', '.join(self.suggestions(key))}?)" if self.suggestions(key) else ""
            raise ConfigError(f"unknown {self.kind} {name!r}{hint}; valid names: {', '.join(self.names())}")
        return key

    def suggestions(self, name: str, n: int = 3) -> List[str]:
        """Up to ``n`` registered names close to ``name``, closest first.

        A close alias suggests the name it stands for, so every suggestion is
        one of :meth:`names`, the list the error message shows.
        """
        key = str(name).strip().lower()
        close = difflib.get_close_matches(key, self.names() + list(self._aliases), n=2 * n, cutoff=0.6)
        canonical = [self._aliases.get(c, c) for c in close]
        return list(dict.fromkeys(canonical))[:n]

    def factory(self, name: str) -> Callable[..., T]:
        """The factory registered under ``name``."""
        return self._factories[self.resolve(name)]

    def parameters(self, name: str) -> List[str]:
        """The names of the keyword parameters the factory registered under ``name`` takes."""
        return [p for p in inspect.signature(self.factory(name)).parameters if p != "self"]

    def check_required(self, name: str, given: Any) -> None:
        """Refuse options that lack a parameter the factory has no default for.

        Raises
        ------
        MissingValue
            Naming the first missing parameter (the CLI shows its flag, e.g.
            ``--eps is required by attack pgd, which has no default for it``), instead of
            the ``TypeError`` the factory would raise.
        """
        parameters = inspect.signature(self.factory(name)).parameters
        missing = [p for p, spec in parameters.items() if p != "self" and spec.default is inspect.Parameter.empty
                   and spec.kind in (spec.KEYWORD_ONLY, spec.POSITIONAL_OR_KEYWORD) and p not in given]
        if missing:
            raise MissingValue(missing[0], f"{self.kind} {self.resolve(name)}")

    def get(self, name: str, **kwargs: object) -> T:
        """Build the item registered under ``name`` with keyword arguments; a missing required one is a MissingValue."""
        self.check_required(name, kwargs)
        return self.factory(name)(**kwargs)

    def accepted(self, name: str) -> List[str]:
        """The parameters :meth:`make` accepts for ``name``."""
        if not self._keyword_only:
            return self.parameters(name)
        params = inspect.signature(self.factory(name)).parameters.values()
        return [p.name for p in params if p.kind == inspect.Parameter.KEYWORD_ONLY]

    def make(self, name: str, options: Dict[str, Any]) -> T:
        """Build the item registered under ``name`` from options, rejecting those it does not take.

        Raises
        ------
        ConfigError
            For an unknown name (listing the valid ones), an option the factory
            has no parameter for (listing those it accepts), or an error of the
            factory listed in ``wrap_errors``.
        MissingValue
            For a required parameter missing from ``options`` (when ``check_required``).
        """
        key = self.resolve(name)
        factory = self._factories[key]
        accepted = self.accepted(key)
        unknown = sorted(set(options) - set(accepted))
        label = f"{self.kind} {key}" if self._name_errors else key
        if unknown:
            takes = f"it accepts {', '.join(accepted)}" if accepted else self._no_options
            raise ConfigError(f"{label} does not take {', '.join(unknown)}; {takes}")
        if self._check_required:
            self.check_required(key, options)
        if not self._wrap_errors:
            return factory(**options)
        try:
            return factory(**options)
        except self._wrap_errors as err:
            raise ConfigError(f"{self.kind} {key}: {err}") from None

    def __contains__(self, name: object) -> bool:
        key = str(name).strip().lower()
        return self._aliases.get(key, key) in self._factories


def parse_value(text: str) -> Any:
    """A ``key=value`` option value of a spec string.

    ``true``/``false`` become bools, ``none``/``null`` None, then an int, a
    float or a fraction such as ``8/255`` is tried; anything else stays the
    (stripped) string.
    """
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return int(stripped)
    except ValueError:
        pass
    try:
        return float(Fraction(stripped)) if "/" in stripped else float(stripped)
    except (ValueError, ZeroDivisionError):
        return stripped

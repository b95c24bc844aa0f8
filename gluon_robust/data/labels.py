"""Class tables: which name (and ImageNet synset) each output of a classifier stands for.

A :class:`ClassTable` turns the names of class folders (``n01440764/``,
``tench/``, ``goldfish/``, ``7/``) into a model's output indices, and output
indices into names for reports. :func:`class_table_for` gives the table of a
GluonCV model-zoo family (ImageNet for 1,000 outputs, CIFAR-10 for a
``cifar_*`` network with 10 outputs), :func:`load_class_table` reads a user's
table from a JSON or text file.

The ImageNet table is GluonCV's own (:class:`gluoncv.data.ImageNet1kAttr`),
imported, not copied.
"""
from __future__ import annotations

import difflib
import json
import logging
import os
import re
from typing import Dict, List, Mapping, Optional, Sequence, Union

from gluon_robust.errors import DataError
from gluon_robust.validation import InvalidValue

__all__ = ["ClassTable", "CIFAR10_CLASSES", "class_table_for", "load_class_table", "imagenet_table", "cifar10_table"]

logger = logging.getLogger(__name__)

#: CIFAR-10 class names in the dataset's label order (label 0 is airplane), as listed on
#: https://www.cs.toronto.edu/~kriz/cifar.html -- neither GluonCV nor MXNet ships them.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

#: What a class table can be given as: a table, a list of names, or a file of names.
LabelsSpec = Union["ClassTable", Sequence[str], str, "os.PathLike[str]"]


def _key(text: str) -> str:
    """The lookup key of a name: lower case, ``_`` and spaces alike, surrounding blanks dropped."""
    return re.sub(r"[\s_]+", " ", str(text)).strip().lower()


class ClassTable:
    """The names of a classifier's outputs, and the lookup of a class folder's name.

    Parameters
    ----------
    names : sequence of str
        One name per output, in output order. Names may repeat (ImageNet has
        two 'crane' and two 'maillot' classes); a repeated name is ambiguous
        and only a synset or an index identifies its class.
    synsets : sequence of str, optional
        One identifier per output (ImageNet WordNet ids such as ``n01440764``).
    aliases : mapping of str to int, optional
        More names for some outputs.
    name : str, optional
        What the table is (``ImageNet``, ``CIFAR-10``, a file name), for messages.

    Raises
    ------
    DataError
        If there are fewer than two names, an empty name, or synsets or aliases
        that do not fit the names.

    Examples
    --------
    >>> table = ClassTable(["cat", "dog"])
    >>> table.lookup("Dog"), table.lookup("0"), table.lookup("horse")
    (1, 0, None)
    >>> table.describe(1)
    '1 (dog)'
    """

    def __init__(self, names: Sequence[str], synsets: Optional[Sequence[str]] = None,
                 aliases: Optional[Mapping[str, int]] = None, *, name: str = "custom") -> None:
        self.names: List[str] = [str(n) for n in names]
        self.synsets: Optional[List[str]] = None if synsets is None else [str(s) for s in synsets]
        self.name = name
        if len(self.names) < 2:
            raise DataError(f"class table {name}: needs at least 2 class names, got {len(self.names)}")
        empty = [i for i, n in enumerate(self.names) if not _key(n)]
        if empty:
            raise DataError(f"class table {name}: class {empty[0]} has an empty name")
        if self.synsets is not None and len(self.synsets) != len(self.names):
            raise DataError(f"class table {name}: {len(self.synsets)} synsets for {len(self.names)} names")
        self._exact: Dict[str, int] = {}  # synsets, aliases and unique names
        self._ambiguous: Dict[str, List[int]] = {}
        by_name: Dict[str, List[int]] = {}
        for i, n in enumerate(self.names):
            by_name.setdefault(_key(n), []).append(i)
        for key, indices in by_name.items():
            if len(indices) == 1:
                self._exact[key] = indices[0]
            else:
                self._ambiguous[key] = indices
        for i, synset in enumerate(self.synsets or ()):
            self._exact[_key(synset)] = i
        for alias, index in (aliases or {}).items():
            if not 0 <= int(index) < len(self.names):
                raise DataError(f"class table {name}: alias {alias!r} points at {index}, outside 0..{len(self)-1}")
            self._exact.setdefault(_key(alias), int(index))

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"ClassTable(name={self.name!r}, classes={len(self)})"

    def lookup(self, text: str) -> Optional[int]:
        """The output index a folder or class name stands for, or None when it names no class.

        Case does not matter and ``_`` equals a space; a synset or a whole
        number ``0..N-1`` names its class too.

        Raises
        ------
        DataError
            If the name is ambiguous (ImageNet's 'crane'): the message lists the
            synsets that tell its classes apart.
        """
        key = _key(text)
        if key in self._exact:
            return self._exact[key]
        if key.isdigit() and int(key) < len(self):
            return int(key)
        if key in self._ambiguous:
            indices = self._ambiguous[key]
            which = ", ".join(f"{self.synsets[i]} (class {i})" if self.synsets else f"class {i}" for i in indices)
            fix = "synset" if self.synsets else "class index"
            raise DataError(f"class name {text!r} is ambiguous in the {self.name} table: it is {which}; "
                            f"name the folder by its {fix} instead")
        return None

    def nearest(self, text: str, n: int = 3) -> List[str]:
        """Up to ``n`` known names or synsets closest to ``text``."""
        known = {_key(k): k for k in list(self.names) + list(self.synsets or ())}
        return [known[k] for k in difflib.get_close_matches(_key(text), list(known), n=n, cutoff=0.4)]

    def label(self, index: int) -> str:
        """The name of output ``index``."""
        return self.names[int(index)]

    def describe(self, index: int) -> str:
        """``'0 (tench)'``: the index and its name."""
        return f"{int(index)} ({self.label(index)})"

    def map_folders(self, folders: Sequence[str], where: str) -> List[int]:
        """The output index of each class folder of a data source.

        Parameters
        ----------
        folders : sequence of str
            Folder names.
        where : str
            The data source, for messages.

        Raises
        ------
        DataError
            Naming the folders that match no class (with the nearest known
            names), or an ambiguous one.
        """
        indices: List[Optional[int]] = []
        for folder in folders:
            try:
                indices.append(self.lookup(folder))
            except DataError as err:
                raise DataError(f"{where}: class folder {folder!r}: {err}") from None
        unmatched = [f for f, i in zip(folders, indices) if i is None]
        if unmatched:
            shown = ", ".join(repr(f) for f in unmatched[:5]) + (f" and {len(unmatched) - 5} more"
                                                                   if len(unmatched) > 5 else "")
            near = "; ".join(f"{f!r}: {', '.join(map(repr, self.nearest(f))) or 'none close'}" for f in unmatched[:3])
            matched = len(folders) - len(unmatched)
            raise DataError(
                f"{where}: {len(unmatched)} of {len(folders)} class folder(s) match no class of the model's "
                f"{self.name} table ({len(self)} classes): {shown} ({matched} matched); nearest known names: "
                f"{near}; name each folder by a class name, a synset or an index 0..{len(self) - 1}, "
                "or give the model's class names with --labels FILE"
            )
        return [int(i) for i in indices]  # type: ignore[arg-type]


def imagenet_table() -> ClassTable:
    """The 1,000 ImageNet classes, from GluonCV's :class:`~gluoncv.data.ImageNet1kAttr`."""
    from gluoncv.data import ImageNet1kAttr

    attributes = ImageNet1kAttr()
    return ClassTable(attributes.classes, attributes.synset, name="ImageNet")


def cifar10_table() -> ClassTable:
    """The 10 CIFAR-10 classes in label order."""
    return ClassTable(CIFAR10_CLASSES, name="CIFAR-10")


def class_table_for(arch: Optional[str], num_classes: int) -> Optional[ClassTable]:
    """The class table a zoo family implies for ``num_classes`` outputs, or None when unknown.

    A ``cifar*`` network with 10 outputs is CIFAR-10; any other network with
    1,000 outputs is ImageNet (every ImageNet classifier of GluonCV's zoo).
    """
    family = (arch or "").lower()
    if family.startswith("cifar"):
        return cifar10_table() if num_classes == 10 else None
    if num_classes == 1000 and not family.startswith("mnist"):
        return imagenet_table()
    return None


def load_class_table(labels: LabelsSpec, num_classes: int) -> ClassTable:
    """A class table for a model with ``num_classes`` outputs, from a table, a list of names or a file.

    Parameters
    ----------
    labels : ClassTable, sequence of str, str or path
        A file: JSON holding a list of names (in output order) or a
        ``{name: index}`` mapping (several names may share an index; every
        index ``0..num_classes-1`` needs one), or plain text with one name per
        line.
    num_classes : int
        The model's number of outputs: the table must have as many classes.

    Raises
    ------
    InvalidValue
        (``labels``; the command line says ``--labels``) for a missing or
        unreadable file, or a table of the wrong length.
    """
    if isinstance(labels, ClassTable):
        table = labels
    elif isinstance(labels, (str, os.PathLike)):
        table = _read_table_file(os.fspath(labels))
    elif isinstance(labels, Sequence) and all(isinstance(n, str) for n in labels):
        table = _table_or_invalid(labels, labels, None, "custom")
    else:
        raise InvalidValue("labels", labels, "a class-name file, a list of class names or a ClassTable")
    if len(table) != num_classes:
        raise InvalidValue("labels", labels if isinstance(labels, (str, os.PathLike)) else table.name,
                           f"a table of {num_classes} class names (one per model output), not {len(table)}")
    return table


def _table_or_invalid(value: object, names: Sequence[str], aliases: Optional[Mapping[str, int]],
                      name: str) -> ClassTable:
    try:
        return ClassTable(names, aliases=aliases, name=name)
    except DataError as err:
        raise InvalidValue("labels", value, f"a valid class table ({err})") from None


def _read_table_file(path: str) -> ClassTable:
    """Read a JSON list, a JSON ``{name: index}`` mapping or a text file of one name per line."""
    if not os.path.isfile(path):
        raise InvalidValue("labels", path, "an existing class-name file (JSON or text) or 'predicted'")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidValue("labels", path, f"a readable UTF-8 class-name file ({err})") from None
    base = os.path.basename(path)
    stripped = text.strip()
    if path.lower().endswith(".json") or stripped.startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise InvalidValue("labels", path, f"valid JSON ({err.msg} at line {err.lineno})") from None
        if isinstance(data, list) and all(isinstance(n, str) for n in data):
            return _table_or_invalid(path, data, None, base)
        if isinstance(data, dict) and all(isinstance(v, int) and not isinstance(v, bool) for v in data.values()):
            count = max(data.values(), default=-1) + 1
            first: Dict[int, str] = {}
            for label, index in data.items():
                first.setdefault(index, label)
            missing = [i for i in range(count) if i not in first]
            if missing or min(data.values(), default=0) < 0:
                raise InvalidValue("labels", path, f"a {{name: index}} mapping naming every index 0..{count - 1} "
                                                   f"(index {missing[0] if missing else min(data.values())} is "
                                                   f"{'unnamed' if missing else 'negative'})")
            return _table_or_invalid(path, [first[i] for i in range(count)], data, base)
        raise InvalidValue("labels", path, "a JSON list of class names or a {name: index} mapping")
    lines = [line.strip() for line in stripped.splitlines()]
    if any(not line for line in lines):
        raise InvalidValue("labels", path, f"one class name per line (line {lines.index('') + 1} is empty)")
    return _table_or_invalid(path, lines, None, base)

"""Progress bars that suit where they are written: tqdm's bar on a terminal (or in a
notebook), and one line when the work is done anywhere else.

Written to a file or a pipe (``tinymoe train ... > log.txt 2>&1``), a tqdm bar is hundreds
of carriage-return updates on one line; there the work gets a single line instead.
"""

import sys
import time

from tqdm.auto import tqdm

# tqdm.auto's bar is a notebook widget inside Jupyter (shown there, whatever the streams).
_NOTEBOOK = any(cls.__module__ == "tqdm.notebook" for cls in tqdm.__mro__)


def progress_bar(iterable=None, desc="", unit="it", total=None, disable=False, file=None):
    """A progress bar over ``iterable`` (or updated by hand up to ``total``), on ``file``
    (standard error by default, as tqdm's).

    On a terminal, or in a notebook, it is tqdm's bar. Anywhere else it draws nothing while
    the work runs and writes one line when it is done (the iteration ends, or ``close()``):
    ``decoding images: 5,902 img in 41.3 s``. Either way it has tqdm's ``update``,
    ``set_postfix_str``, ``close``, ``n`` and ``total``, and is a context manager.

    Example:
        >>> for path in progress_bar(paths, desc="decoding images", unit="img"):
        ...     read(path)
    """
    file = sys.stderr if file is None else file
    if disable or _NOTEBOOK or _is_terminal(file):
        return tqdm(iterable, desc=desc, unit=unit, total=total, disable=disable, file=file)
    return _DoneLine(iterable, desc, unit, total, file)


def _is_terminal(file):
    try:
        return file.isatty()
    except (AttributeError, ValueError):
        return False


class _DoneLine:
    """tqdm's interface, drawing nothing until the work is done, then one line."""

    def __init__(self, iterable, desc, unit, total, file):
        self.iterable, self.desc, self.unit, self.file = iterable, desc, unit, file
        self.total = len(iterable) if total is None and hasattr(iterable, "__len__") else total
        self.n, self.postfix, self.closed, self.start = 0, "", False, time.monotonic()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.n += 1
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def update(self, n=1):
        self.n += n

    def set_postfix_str(self, text):
        self.postfix = str(text)

    def refresh(self):
        pass

    def close(self):
        if self.closed:
            return
        self.closed = True
        seconds = time.monotonic() - self.start
        extra = f" ({self.postfix})" if self.postfix else ""
        print(f"{self.desc}: {self.n:,} {self.unit} in {seconds:.1f} s{extra}",
              file=self.file, flush=True)

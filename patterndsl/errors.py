"""User-facing errors.

Every problem with a spec is reported as a :class:`PsparseError` that names the
line and column (1-based), shows the offending source line with a caret under
the offending text, and says what was expected in the user's words.  The CLI
prints ``str(err)`` and exits 1; nothing ever surfaces as a Python traceback.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """A region of the source text. Lines and columns are 1-based; end is exclusive."""

    line: int
    column: int
    end_line: int
    end_column: int
    start_pos: int = 0
    end_pos: int = 0


def _visible(text: str) -> str:
    """``text`` with each unprintable character (a stray carriage return, a form feed, a NUL)
    shown as one ``?``: printed raw they would move the cursor or vanish, and the caret below
    counts one column per character."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else "?" for c in text)


class PsparseError(Exception):
    """Base class for every error psparse reports about user input or use."""

    def __init__(self, message: str, *, source: str | None = None, span: Span | None = None,
                 expected: str | None = None, hint: str | None = None):
        self.message = message
        self.source = source
        self.span = span
        self.expected = expected
        self.hint = hint
        super().__init__(self.render())

    @property
    def line(self) -> int | None:
        return self.span.line if self.span else None

    @property
    def column(self) -> int | None:
        return self.span.column if self.span else None

    def source_line(self) -> str | None:
        if self.source is None or self.span is None:
            return None
        # Positions count lines by "\n" alone; str.splitlines() would also break at "\r",
        # form feeds, U+2028 and others, and quote the wrong text under the caret.
        lines = self.source.split("\n")
        idx = self.span.line - 1
        if 0 <= idx < len(lines):
            line = lines[idx]
            return line[:-1] if line.endswith("\r") else line
        return ""

    def render(self) -> str:
        head = self.message
        if self.span is not None:
            head = f"line {self.span.line}, column {self.span.column}: {self.message}"
        parts = [head]
        text = self.source_line()
        if text is not None:
            # Long lines (a 1 MB one-liner) are clipped around the caret so the message stays readable.
            col = self.span.column - 1
            width = 1
            if self.span.end_line == self.span.line:
                width = max(1, self.span.end_column - self.span.column)
            # A caret run is capped so that an error about a million-character word stays short.
            width = min(width, 120)
            lo = max(0, col - 60)
            hi = min(len(text), col + width + 60)
            shown = ("..." if lo > 0 else "") + text[lo:hi] + ("..." if hi < len(text) else "")
            pad = col - lo + (3 if lo > 0 else 0)
            width = min(width, max(1, hi - col))
            parts.append("    " + _visible(shown.expandtabs(1)))
            parts.append("    " + " " * pad + "^" * width)
        if self.expected:
            parts.append(f"expected {self.expected}")
        if self.hint:
            parts.append(self.hint)
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.render()


class PsparseSyntaxError(PsparseError):
    """The text is not a well-formed spec."""


class PsparseSemanticError(PsparseError):
    """The text parses, but means nothing valid (bad argument, unknown name, overlapping lines...)."""


class PsparseUsageError(PsparseError):
    """A well-formed spec used wrongly at call time (missing doc_ids, uncovered head, bad shapes...)."""


@contextlib.contextmanager
def out_of_memory_as_usage_error(message: str):
    """Report an allocation that cannot succeed (a plan or layout for an enormous n) as a
    usage error with ``message`` instead of the allocator's RuntimeError or MemoryError;
    any other RuntimeError passes through."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "allocate" not in str(e):
            raise
        raise PsparseUsageError(message) from None

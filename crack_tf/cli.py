"""Command-line entry points: user errors as one line, internal errors with their traceback.

``run(main)`` replaces ``absl.app.run(main)`` in every crack_tf command. A mistake of the user's
(a bad flag value, a missing file, empty or one-class data, a path that is not a model: the
``ValueError`` / ``FileNotFoundError`` family, absl flag errors) prints ``error: <message>`` on
one line to stderr and exits with code 2; ``--verbose`` (or ``CRACK_TF_VERBOSE=1``) shows the
traceback instead. Anything else is a bug and keeps Python's traceback. ``main`` may return an
exit code (0 = all good, 1 = some inputs failed).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from absl import app, flags

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
               PermissionError)
EXIT_USER_ERROR = 2
EXIT_SOME_FAILED = 1


def one_line(err: BaseException) -> str:
    """The exception's message on one line (multi-line messages joined with '; ')."""
    text = str(err).strip() or type(err).__name__
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def verbose() -> bool:
    if os.environ.get("CRACK_TF_VERBOSE", "") not in ("", "0"):
        return True
    return "verbose" in flags.FLAGS and flags.FLAGS.is_parsed() and flags.FLAGS.verbose


def user_error(err: BaseException, code: int = EXIT_USER_ERROR) -> None:
    """Prints ``error: ...`` and exits with ``code`` (re-raises under --verbose)."""
    if verbose():
        raise err
    print(f"error: {one_line(err)} (--verbose shows the traceback)", file=sys.stderr, flush=True)
    sys.exit(code)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        print(f"error: {one_line(err)} (see --helpfull)", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)


def run(main: Callable[[list[str]], int | None], extra_errors: tuple[type[BaseException], ...] = ()) -> None:
    """``absl.app.run(main)`` with the error policy of this module."""
    if "verbose" not in flags.FLAGS:
        flags.DEFINE_bool("verbose", False, "Show the Python traceback of an error.")

    def wrapped(argv: list[str]) -> int | None:
        try:
            return main(argv)
        except app.UsageError as err:
            user_error(err)
        except USER_ERRORS + extra_errors as err:
            user_error(err, EXIT_SOME_FAILED if isinstance(err, extra_errors) else EXIT_USER_ERROR)
        return None

    app.run(wrapped, flags_parser=_parse_flags)


def report_left_out(command: str, skipped: list[tuple[str, str]]) -> int:
    """Names the files a command could not use (stderr); the exit code: 1 if there are any, else 0."""
    if not skipped:
        return 0
    print(f"{command}: {len(skipped)} file(s) could not be used and were left out:", file=sys.stderr)
    for path, reason in skipped:
        print(f"  {path}: {reason}", file=sys.stderr)
    return EXIT_SOME_FAILED


def run_tool(main_args: Callable[[list[str]], Any], done: Callable[[Any], str]) -> int:
    """An argparse tool's ``main``: ``main_args(sys.argv[1:])``, user errors as one line (exit 2),
    else prints ``done(result)`` and returns 0."""
    try:
        result = main_args(sys.argv[1:])
    except USER_ERRORS as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(done(result))
    return 0


def _key_flags_of_main(module: str) -> None:
    """``--help`` lists the flags of the main module only: a command defined in ``module`` but run
    under another name (``python -m crack_tf.predict``, a console script) lists its own flags."""
    for flag in flags.FLAGS.get_key_flags_for_module(module):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)


def entry_point(define_flags: Callable[[], None], main: Callable[[list[str]], int | None],
                extra_errors: tuple[type[BaseException], ...] = ()) -> Callable[[], None]:
    """The ``run()`` of a command (its console script): define its flags, then :func:`run`."""

    def command() -> None:
        define_flags()
        _key_flags_of_main(define_flags.__module__)
        run(main, extra_errors)

    return command

"""Moved to infinity_backend; this stand-in keeps the old import path working for now (see generator._moved)."""

from generator._moved import reexport

reexport(__spec__.name, globals())

if __name__ == "__main__":
    raise SystemExit(main())  # noqa: F821 (re-exported)


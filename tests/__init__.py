"""A package, so that pytest puts the repository root (not tests/) first on sys.path: tests/trainer would
otherwise shadow the real `trainer` package and its submodules would come from wherever medchat is installed."""

"""The local studio a ``supervisor start --local`` owns: which config it may use
(``ownership``), starting and stopping its process (``launch``), a stale one left by a
crash (``stale``), and keeping it up while the supervisor runs (``keeper``). The studio is
a process of its own (``python -m localstudio``); nothing here imports ``localstudio``."""

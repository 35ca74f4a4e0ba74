"""Entry points: the command line and the programs it starts (``compare``, ``serve``, ``mnist``, ``demo``).

Everything here sits on top of the library (config, data, methods, train, evaluate, viz) and nothing in the
library imports from here.
"""

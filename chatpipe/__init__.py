"""chatpipe: the command line, the top driver (chatpipe → flows → tasks → model → kernels), and the one name
everything of ours is imported under.

The folders flows/, tasks/, model/, kernels/ and serve/ stay at the top of the repository, where the layout
puts them, but they are `chatpipe.flows`, `chatpipe.tasks`, ...: nothing of ours is importable as a bare
`kernels` (Hugging Face's kernel hub), `model`, `tasks`, `flows` or `serve`, and as they have no
`__init__.py`, a Python started in the repository root cannot mistake one for an installed package of that
name either. An installed wheel holds them inside this package (pyproject.toml maps them); in a source tree
(the editable install, or PYTHONPATH=<a checkout>) they sit beside this folder, and the lines below make
each one this package's subpackage, pointing at that checkout's folder.
"""
import sys
from importlib.machinery import ModuleSpec
from importlib.util import module_from_spec
from pathlib import Path

FOLDERS = ("flows", "tasks", "model", "kernels", "serve")

_here = Path(__file__).resolve().parent
for _folder in FOLDERS:
    _name, _source = f"{__name__}.{_folder}", _here.parent / _folder
    if _name not in sys.modules and not (_here / _folder).is_dir() and _source.is_dir():
        _spec = ModuleSpec(_name, None, is_package=True)
        _spec.submodule_search_locations = [str(_source)]
        sys.modules[_name] = globals()[_folder] = module_from_spec(_spec)

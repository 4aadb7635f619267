"""Attributes imported on first use (PEP 562), so importing a package loads nothing heavy."""
import importlib


def attach(namespace, attributes):
    """(__getattr__, __dir__, __all__) of the module whose globals() is `namespace`.

    attributes: {module name: names it provides}; each name is imported from its module
    on first access and then kept in `namespace`.
    """
    home = {name: module for module, names in attributes.items() for name in names}

    def __getattr__(name):
        if name not in home:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home[name]), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(home))

    return __getattr__, __dir__, sorted(home)

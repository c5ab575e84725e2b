"""The bundled provider mappings, a data package: importlib.resources finds these YAML files in
any install (a checkout, a wheel, a zip). Only the `*.yaml` files are mappings."""

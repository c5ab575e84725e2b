"""The bundled Cerberus schemas (config, mapping, case), a data package read with
importlib.resources."""

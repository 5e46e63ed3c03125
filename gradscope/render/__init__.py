"""Renderers: Trace + findings to text, DOT, SVG. Only svg.py imports graphviz."""

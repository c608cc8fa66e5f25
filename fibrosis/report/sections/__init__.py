"""The numbered sections of the validation report, one module per group of sections.

Each section is a function ``(Context) -> list[Block]`` without its heading;
:data:`fibrosis.report.build.SECTIONS` puts them in order and numbers them.
"""

"""Training recipes, each runnable as a script through its link in the repository's ``recipes/`` folder, and
``common``, what they share.

Run as a script, a recipe's folder comes first on ``sys.path``, so a module here named like a top-level module (the
standard library's ``math`` or ``code``, say) would shadow it: the recipes are ``<name>_recipe`` modules.
"""

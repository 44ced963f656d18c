"""Training recipes, each runnable as a script through its link in the repository's ``recipes/`` folder.

This folder holds nothing but recipe modules: run as a script, a recipe's folder comes first on ``sys.path``, so any
module here would shadow a top-level module of the same name.
"""

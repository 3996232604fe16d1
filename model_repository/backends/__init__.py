"""Python-backend model sources; rendering copies each into ``<model>/1/model.py`` of a repository."""

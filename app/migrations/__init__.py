"""Numbered SQL migrations, applied in order by app.db.migrate (a package so the .sql files ship with it)."""

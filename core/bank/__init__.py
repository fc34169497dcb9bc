"""The phrase bank: editor-curated replies in SQLite, with history and import/export."""

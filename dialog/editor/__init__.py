"""The editors' web app over the phrase bank: browse, edit, review, lint and try (see docs/editor.md)."""

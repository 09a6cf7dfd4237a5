"""One module per command; cli/app.py registers them."""

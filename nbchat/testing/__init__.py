"""Test rigs shipped with nbchat so users' own tests and the notebooks can use them."""

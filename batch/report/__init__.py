"""`batch report`: figures from a results folder, rendered for a terminal, as JSON, or as one HTML file."""

"""Training, evaluation and export of atypical vs normal mitotic figure classifiers (MIDOG 2025 Track 2).

Run `python -m training --help` for the commands.
"""

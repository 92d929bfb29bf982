"""A lean RADIUS codec for the hot packets (Access-Request, Accounting-Request and their
replies), pinned byte for byte to pyrad, which stays for the dictionary and the rest."""

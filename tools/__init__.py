"""Development tools of ccsync: not part of the installed package."""

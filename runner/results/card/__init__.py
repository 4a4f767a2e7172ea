"""The report card (`card`), the published figures beside it (`published`), and paired
comparisons of runs (`compare`)."""

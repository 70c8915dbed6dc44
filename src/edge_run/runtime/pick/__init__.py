"""The picker: candidates (model x quant type x context), their quality and speed, the ranking, why it chose,
--measure."""

"""Architecture explorer: shapes for a parameter budget, their costs and measured speed."""

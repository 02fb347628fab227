"""Apply decisions to an nn.Module: physical channel and head removal."""

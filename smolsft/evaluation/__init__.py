"""The metric and benchmark names shared by the scorer and the reports, and the
statistics of a score and of a comparison."""

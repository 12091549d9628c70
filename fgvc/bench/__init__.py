"""The benchmarks, apart from the library they measure. One command each:

- :mod:`.throughput`: ``fgvc bench``, a method's training and inference images/s, peak memory and loader speed;
- :mod:`.realdata`: ``fgvc bench-data``, the methods on the project's shared real data (a preset of compare);
- :mod:`.index`: ``fgvc bench-index``, the dataset index at iNaturalist scale;
- :mod:`.service`: ``fgvc bench-serve``, the web service under load;
- :mod:`.gpu_check`: ``fgvc gpu-check`` and ``make gpu-check``, every feature on a GPU and the headline table.

Their tables are printed with :func:`fgvc.report.tables.markdown_table`.
"""

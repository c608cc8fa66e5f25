"""What several test modules share, so that no test module imports another: DICOM and PNG
writers (dicom_factory), a DICOM network peer (dicom_net), a real PACS (pacs), an SR reader
(sr_reader), reference data (asah_data), a scored checkpoint (checkpoints), child processes under
limits (processes), manifest rows from their cells (manifest), an evaluated run for the report (runs), monitor inputs (monitor) and a scored folder, a server
and a browser for `fibrosis review` (review).
Imported as ``from helpers.<module> import ...``: tests/conftest.py puts tests/ on sys.path."""

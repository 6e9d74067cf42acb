"""Everything that runs outside a web request: RQ jobs, their enqueue helpers,
the reconciler and the DICOM receiver."""

"""Pure imaging library: labels, safe extraction, DICOM headers, routing.

Nothing here imports Flask, the database, the queue or other Scanyard modules.
"""

"""The DICOM sender: `studystream send`, `send-file`, `echo` and `synth` (see scu/cli.py, scu/synth.py)."""

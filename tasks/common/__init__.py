"""Used by every stage; imports no stage."""

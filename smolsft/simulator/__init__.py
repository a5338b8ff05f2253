"""The user simulator (Parts 3-4 trained with reverse masking): its measures."""

"""Key providers: where the data of a presented key comes from."""

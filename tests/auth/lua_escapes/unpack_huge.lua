-- Push millions of values onto the stack.
return select("#", unpack({}, 1, 1e8)) > 0

-- Hand a Python object back to the host.
return {allow = python ~= nil, metadata = {obj = python}}

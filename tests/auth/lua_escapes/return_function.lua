-- Hand a function back to the host as metadata.
return {allow = true, metadata = {callback = function() end}}

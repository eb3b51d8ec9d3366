"""The agent's bulk service: answering relay pipes (:mod:`.pipes`), the trees it serves
(:mod:`.sources`), and the commands that use them (:mod:`.service`)."""
